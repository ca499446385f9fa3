"""The agent that runs on each village terminal (a small Linux board with an amplifier).

It verifies, fetches, caches, arbitrates by priority and plays, reports every state
change and its health, and reaches hardware only through `edge_agent.hardware`.
"""
