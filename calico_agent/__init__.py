"""calico_agent — not built yet (see the open issues)."""
