"""Implementations of edge_agent.hardware for real boards (the simulated one lives in
firmware_sim). Which one a terminal runs is its device file's `board`."""
