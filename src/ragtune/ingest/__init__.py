"""Ingestion: loaders turn files into Documents, the chunker cuts Documents into Chunks,
the pipeline brings a store up to date with a set of files."""
