"""`make run`: start and supervise the three services and Envoy in the foreground.

Entry point: `python -m pi.launcher` (see `pi.launcher.app.launch`). Nothing is imported
here, so `__main__` can configure gRPC before gRPC is loaded.
"""
