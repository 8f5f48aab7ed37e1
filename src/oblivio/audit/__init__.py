"""Privacy audits of trained models: membership-inference attacks and their metrics."""
