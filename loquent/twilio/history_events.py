"""Names of the realtime events that history imports and catch-up publish.

Imports never publish ``messaging.message.new`` per message: thousands of old texts must not
look like a flood of new conversations. Progress goes out once per page; the end of a run
goes out once, and pages that show the inbox re-fetch on it.
"""

EVT_IMPORT_PROGRESS = "twilio.import.progress"  # payload: the import JSON, after each page
EVT_IMPORT_FINISHED = "twilio.import.finished"  # payload: the import JSON, finished or failed
EVT_CATCHUP_FINISHED = "twilio.catchup.finished"  # payload: the run's JSON, when it found any
