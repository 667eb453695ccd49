'use strict';
// The peer for BENCHMARKS.md: the Node stack roomcast replaces, reduced to its best case.
// socket.io 4 with @socket.io/redis-adapter (redis 4 client), speaking the original app's
// events, broadcast only: no database, so nothing is stored and nothing waits for a store.
//
//   PORT=3001 REDIS_URL=redis://127.0.0.1:6380 node server.js
//
// Run two (or more) with the same REDIS_URL: a message sent on one reaches the members of
// its room on every instance through Redis pub/sub. GET /healthz answers 200 once Redis is
// connected and the port is open. SIGTERM or SIGINT stops it.

const http = require('node:http');
const { randomUUID } = require('node:crypto');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const PORT = Number(process.env.PORT || 3001);
const HOST = process.env.HOST || '127.0.0.1';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

// The room map of create_room, kept in memory (the original stored it; this is broadcast only).
const rooms = {};

function hhmm(date) {
  // The original app's `time`: the server's local hours and minutes, unpadded.
  return `${date.getHours()}:${date.getMinutes()}`;
}

async function main() {
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  for (const [name, client] of [['pub', pub], ['sub', sub]]) {
    client.on('error', (err) => console.error(`redis ${name}: ${err.message}`));
  }
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer((req, res) => {
    if (req.url === '/healthz' || req.url === '/readyz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
      return;
    }
    res.writeHead(404);
    res.end();
  });
  const io = new Server(server, {
    adapter: createAdapter(pub, sub),
    cors: { origin: '*' },
  });

  io.on('connection', (socket) => {
    socket.emit('room', rooms);

    socket.on('join_room', (roomId, previousRoomId) => {
      if (typeof roomId !== 'string' || !roomId) return;
      if (typeof previousRoomId === 'string' && previousRoomId) socket.leave(previousRoomId);
      socket.join(roomId);
      // The original's payloads are JSON strings (class-transformer's serialize).
      socket.emit('joined_room', roomId, '[]');
    });

    socket.on('send_message', (data) => {
      if (!data || typeof data.roomId !== 'string') return;
      const { roomId, message, username } = data;
      socket.to(roomId).emit('room_message', JSON.stringify({ message, username, time: hhmm(new Date()) }));
    });

    socket.on('create_room', (data) => {
      if (!data || typeof data.roomName !== 'string' || !data.roomName) return;
      // Like the original: a new id, the map to everyone, and the creator moved into the room.
      const roomId = randomUUID();
      rooms[roomId] = { roomId, name: data.roomName, messages: [] };
      io.emit('room', rooms);
      if (typeof data.roomId === 'string' && data.roomId) socket.leave(data.roomId);
      socket.join(roomId);
      socket.emit('joined_room', roomId, '[]');
    });
  });

  server.listen(PORT, HOST, () => console.log(`peer listening on ${HOST}:${PORT}, redis ${REDIS_URL}, pid ${process.pid}`));

  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err) => {
  console.error(`peer: ${err.stack || err}`);
  process.exit(1);
});
