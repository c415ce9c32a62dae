"""trio-enclave: one nursery, one context, one emitter per WebSocket connection."""
