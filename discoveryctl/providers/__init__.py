"""HTTP clients for Amazon and Stripe: typed results, typed errors, no database."""
