"""fitconnect-kit server package."""
