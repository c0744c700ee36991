"""`make chaos`: the mesh under faults, and proof that nothing acknowledged is lost or
charged twice (see chaos/README.md)."""
