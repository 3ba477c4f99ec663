"""Alert webhooks (docs/security.md, docs/semantics.md): each committed alert whose threshold
names a URL is POSTed there at least once, signed, with its idempotency key; ``plan.py`` is the
pure core, ``sender.py`` the runtime, ``signing.py`` the request a receiver sees."""
