"""The fleet's message bus (NATS JetStream): wire layouts, edge publishing, workers, sink."""
