"""Pure FIT-Connect protocol rules: no network, no database, no global state.

Everything the SDK and our Zustelldienst share lives here, so that one rule has one place.
"""
