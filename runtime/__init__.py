"""The torch runtime (imported lazily): model, mesh, parallel plans, train and generate."""
