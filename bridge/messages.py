"""Every sentence the bot or a ghost says, by key. Code refers to keys, never to literals,
so translations can be added in one place."""
from __future__ import annotations

ENGLISH: dict[str, str] = {
    "greeting": (
        "Hi! I pair you with a random stranger for an anonymous chat, possibly on another "
        "Matrix server. Your partner never sees your Matrix ID, name, avatar or server, and "
        "you never see theirs.\n\n"
        "The rules:\n"
        "1. You must be 18 or older.\n"
        "2. Be respectful. No harassment, hate, threats or spam.\n"
        "3. Nothing illegal, and no sexual content involving minors, ever.\n"
        "4. Don't share personal details you would regret sharing.\n\n"
        "Send {prefix}agree to confirm you are 18 or older and accept these rules. "
        "Send {prefix}help to see every command."
    ),
    "help": (
        "Commands:\n"
        "{prefix}agree: confirm you are 18 or older and accept the rules\n"
        "{prefix}start: find a random stranger to chat with\n"
        "{prefix}next: end the current chat and find someone new\n"
        "{prefix}stop: end the current chat and stop looking\n"
        "{prefix}help: this list\n\n"
        "In a chat room, leaving the room ends the chat and finds you someone new."
    ),
    "agreed": "Thanks! Send {prefix}start when you are ready to meet a stranger.",
    "already_agreed": "You have already accepted the rules. Send {prefix}start to meet a stranger.",
    "must_agree": (
        "Before you can chat, please confirm you are 18 or older and accept the rules: "
        "send {prefix}agree. Send {prefix}help to see the rules again."
    ),
    "queued": "Looking for a stranger… I'll invite you to a chat as soon as someone is found.",
    "requeued": "Looking for a new stranger…",
    "already_waiting": "You are already in the queue. I'll invite you as soon as someone is found.",
    "already_chatting": (
        "You are already chatting with a stranger. Send {prefix}next for someone new, "
        "or {prefix}stop to end the chat."
    ),
    "stopped_waiting": "You left the queue. Send {prefix}start to look again.",
    "stopped_chat": "You ended the chat. Send {prefix}start to meet someone new.",
    "nothing_to_stop": "You are not chatting or waiting. Send {prefix}start to meet a stranger.",
    "unknown_command": "I don't know the command {command}. Send {prefix}help to see what I understand.",
    "not_a_command": "I'm a bot: I only understand commands. Send {prefix}help to see them.",
    "chat_opened": "You're now chatting with a random stranger. Say hi!",
    "partner_left": (
        "Stranger has disconnected. Send {prefix}start to the bot to meet someone new."
    ),
    "you_left": "You have disconnected.",
    "partner_no_show": "The stranger didn't join the chat in time. Looking for someone new…",
    "invite_expired": (
        "You didn't accept the chat invite in time, so the stranger was matched with someone "
        "else. Send {prefix}start when you're ready."
    ),
    "chat_ended_dm": "Your chat ended. Send {prefix}start to meet someone new.",
    "chat_not_active": (
        "This chat has ended; nothing you write here reaches anyone. "
        "Send {prefix}start to the bot to meet someone new."
    ),
    "refused_unsupported_msgtype": "Only text messages can be sent to the stranger; that one was not delivered.",
    "refused_unsupported_event": "That can't be sent to the stranger; it was not delivered.",
    "refused_too_long": "That message is too long to deliver. Please split it up.",
    "refused_malformed": "That message could not be read, so it was not delivered.",
    "refused_unknown_target": "That edit refers to a message the stranger never got; it was not delivered.",
    "dm_encrypted": (
        "I can't read encrypted messages yet. Please message me from a room without "
        "encryption."
    ),
    "refused_encrypted": (
        "Encrypted messages can't be relayed yet, so this one was not delivered. "
        "Please use a room without encryption."
    ),
}


def text(key: str, **values: str) -> str:
    return ENGLISH[key].format(**values)
