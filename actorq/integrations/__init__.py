"""Optional integrations with other libraries; each needs its extra installed."""
