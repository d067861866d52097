"""RedMessenger benchmark suite: load generator, publisher, baseline relay, scenarios."""
