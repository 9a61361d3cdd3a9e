"""StratusVault's pure storage library: chunking, hashing, chunk frames, chunk stores, manifests, diffs.

No network and no metadata database here. Import the submodules you need, for example
``from cas.chunker import chunk_file`` or ``from cas.store import LocalChunkStore``; this package
itself imports nothing so that ``import cas.errors`` stays cheap.
"""
