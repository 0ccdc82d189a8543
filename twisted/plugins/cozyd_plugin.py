from twisted.application.service import ServiceMaker

cozyd = ServiceMaker(
    "cozyd", "cozyd.tap", "A cozy-stack compatible personal cloud server", "cozyd"
)
