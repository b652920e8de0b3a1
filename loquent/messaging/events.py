"""Names of the realtime events this package publishes."""

EVT_MESSAGE_NEW = "messaging.message.new"
EVT_MESSAGE_STATUS = "messaging.message.status"
