"""The terminal hardware simulated, and fleets of simulated terminals running the real agent."""
