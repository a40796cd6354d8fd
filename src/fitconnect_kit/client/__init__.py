"""fitconnect-kit client package."""
