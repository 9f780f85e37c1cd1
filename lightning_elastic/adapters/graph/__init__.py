"""Graph tracing for the generic adapter: channel spaces read from a model's autograd graph."""
