"""The launch runtime: what runs on the nodes (head service, node agent, client API)."""
