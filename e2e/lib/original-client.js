'use strict';
// A model of the original app's client (iamdejan/socketio-chat-app, client/context and
// client/containers), written from its public source: the same emits, and the same parsing
// of what the server sends, with class-transformer 0.5.1's deserialize/deserializeArray.
// Its state is what its React components render: the room map, the room it is in, and the
// message list. A handler that throws (as the real client's would, on a payload shape it
// cannot parse) is recorded in `errors` instead of crashing the test process.

const { io } = require('socket.io-client');
const { deserialize, deserializeArray } = require('class-transformer');
const { WAIT_MS } = require('./harness');

/** The client's message type: `{message, username, time}`. */
class MessageDetail {}

class OriginalClient {
  /** Connects like the original client does, with `username` as the name it types in. */
  constructor(url, username, options = {}) {
    this.username = username;
    this.roomId = '';
    this.rooms = null; // set by the first `room` event
    this.messages = [];
    this.errors = [];      // handlers that threw
    this.serverErrors = []; // roomcast's `error` events
    this.socket = io(url, { transports: ['websocket'], ...options });
    this.guard('room', (value) => { this.rooms = value; });
    this.guard('joined_room', (roomId, messagesString) => {
      this.roomId = roomId;
      this.messages = deserializeArray(MessageDetail, messagesString);
    });
    this.guard('room_message', (messageDetailString) => {
      this.messages = [...this.messages, deserialize(MessageDetail, messageDetailString)];
    });
    this.socket.on('error', (error) => this.serverErrors.push(error));
  }

  guard(event, handler) {
    this.socket.on(event, (...args) => {
      try {
        handler(...args);
      } catch (err) {
        this.errors.push(`${event}: ${err.message}`);
      }
    });
  }

  /** The CREATE ROOM button: the name, and the room the user is in now. */
  createRoom(roomName) {
    this.socket.emit('create_room', { roomName, roomId: this.roomId });
  }

  /** A click on a room of the map: `join_room(key, roomId)`, nothing if already there. */
  joinRoom(key) {
    if (key === this.roomId) return;
    this.socket.emit('join_room', key, this.roomId);
  }

  /** The Send button: emits, and shows the message at once as the user's own. */
  sendMessage(message) {
    this.socket.emit('send_message', { roomId: this.roomId, message, username: this.username });
    const date = new Date();
    this.messages = [...this.messages, { username: 'You', message, time: `${date.getHours()}:${date.getMinutes()}` }];
  }

  /** The key of the room named `name` in the map, if any. */
  roomNamed(name) {
    return Object.keys(this.rooms || {}).find((key) => this.rooms[key].name === name);
  }

  /** The texts shown, as `username: message`. */
  shown() {
    return this.messages.map((m) => `${m.username}: ${m.message}`);
  }

  /** Waits for `check(this)`; on timeout the error says what the client shows. */
  async until(what, check) {
    const deadline = Date.now() + WAIT_MS;
    while (Date.now() < deadline) {
      if (this.errors.length) throw new Error(`${this.username}'s handlers threw: ${this.errors.join('; ')}`);
      if (check(this)) return;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    throw new Error(`${this.username}: timed out waiting for ${what}; room ${JSON.stringify(this.roomId)}, `
      + `map ${JSON.stringify(this.rooms)}, shown ${JSON.stringify(this.shown())}, errors ${JSON.stringify(this.serverErrors)}`);
  }

  close() {
    this.socket.close();
  }
}

module.exports = { OriginalClient, MessageDetail };
