"""fitconnect-kit server/api package."""
