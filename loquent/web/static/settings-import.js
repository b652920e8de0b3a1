// Settings: import the account's message history and follow its progress live.
import { api } from "./api.js";
