"""Who may do what (docs/security.md): API tokens and their roles, the cluster secret that
peer links prove, and the TLS contexts of every socket. Pure code, except ``tls.py`` (which
reads certificate files) and ``tokens.TokenTable.load`` (which reads the token file)."""
