"""The page's layout, one file per part; each builds its widgets inside the caller's `with` block and binds them to
the app's handlers (MedAgentSegWeb/features)."""
