"""fitconnect-kit server/storage package."""
