"""The autoscaler: a pure planner and a reconciler that runs on the head node (see DESIGN.md)."""
