"""Stores hold chunks, their vectors and a keyword index. LanceDB is the embedded default."""
