"""HTTP handlers, one module per resource; ``app.routes`` wires them up."""
