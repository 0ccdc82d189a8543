"""The contract suite's fixtures (``engine``, ``store``, ``prefix``) live in
``tests/support/stores.py`` so the instance tests can use them too: every
test that takes ``store`` runs on both storage engines."""
