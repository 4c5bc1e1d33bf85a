"""One module per domain. Each defines its calls once (pure `Call` builders) and two thin
classes, sync and async, whose methods only execute those calls."""
