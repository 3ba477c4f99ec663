"""The ``unimeter`` command (``main.py``); ``python -m unimeter.cli`` runs it too."""
