"""fitconnect-kit server/workers package."""
