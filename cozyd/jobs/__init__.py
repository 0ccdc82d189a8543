"""Jobs: the queue, the workers that run them, and the triggers that make them."""
