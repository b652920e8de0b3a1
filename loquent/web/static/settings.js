// Settings: the Twilio connection, phone numbers and the event sink (owner actions).
import { api } from "./api.js";
