// Settings: message bodies that could not be fetched, and the owner's retry.
import { api } from "./api.js";
