"""Ground floor: settings, errors, typed objects, stores, embedder and model runtimes, prompt."""
