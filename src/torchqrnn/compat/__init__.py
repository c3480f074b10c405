"""Compatibility with the two reference implementations' APIs (salesforce's is the package's own)."""
