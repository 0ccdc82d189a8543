"""Mail: messages built from a job's options or the stack's own templates,
sent over SMTP with Twisted's mail client (``cozyd.mail.smtp``)."""
