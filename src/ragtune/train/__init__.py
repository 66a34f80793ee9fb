"""Fine-tuning: demonstration data, trainers and the adapters they produce."""
