"""The programs launch starts by module name (`python -m NAME`), declared once.

Who starts whom is a dependency the import graph does not show: the runtime's supervisor on the head
starts the autoscaler, a driver starts the launcher's tunnel helper, the lifecycle and the providers run
the runtime's node control on nodes. Each such name lives here; the layer test refuses a module name
written anywhere else, so every process-level dependency is one that can be read in this file.
"""

NODE_CONTROL = "runtime.node"  # on every node: start|stop|status|supervise of its runtime
HEAD_SERVICE = "runtime.head"  # on the head: the head service (started by the node's supervisor)
NODE_AGENT = "runtime.agent"  # on every node: the node agent (started by the node's supervisor)
CONTROL_LOOP = "autoscaler.monitor"  # on the head: the autoscaler (started by the node's supervisor)
SIM_AGENTS = "runtime.sim_agents"  # on a sim cluster's head: its simulated nodes' agents (started by providers.sim)
TUNNEL = "launcher.tunnel"  # on a driver: the SSH port forward to a cluster's head (started by runtime.api)
