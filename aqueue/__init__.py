"""aqueue: an asyncio-native task queue on RabbitMQ."""
