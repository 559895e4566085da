"""The lifecycle layer: the ClusterSpec resolved once, and the one set of node operations (create, set
up over the transport, drain, terminate) that `launch up` and the head's autoscaler both run."""
