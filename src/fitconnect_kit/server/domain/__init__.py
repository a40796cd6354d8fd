"""fitconnect-kit server/domain package."""
