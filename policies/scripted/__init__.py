"""A scripted LIBERO expert that reads privileged simulator state (`--policy scripted`).

`expert.py` holds the planner and waypoint controller, `policy.py` the `Policy` adapter.
"""
