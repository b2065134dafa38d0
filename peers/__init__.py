"""Local stand-ins for the providers we hand messages to (SMTP, Twilio), for tests and dev."""
