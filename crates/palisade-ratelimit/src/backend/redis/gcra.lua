-- palisade-ratelimit: GCRA on one bucket, atomically, on the Redis server's clock.
--
-- KEYS[1]  the bucket's key; its value is the theoretical arrival time (TAT), microseconds
--          since 2023-11-14 (TIME minus 1 700 000 000 s, which keeps the numbers exact in
--          Lua's doubles to a few nanoseconds)
-- ARGV[1]  the token interval, microseconds (may have a fraction)
-- ARGV[2]  the burst (the bucket's size)
-- ARGV[3]  tokens
-- ARGV[4]  "1" takes the tokens if all are there; "0" gives them back (a refund); "2" takes
--          as many as are there, up to ARGV[3], at least one (a lease)
--
-- Returns {tokens taken (0: denied), tokens remaining, retry after (µs), full again after (µs)}.
-- A bucket lives exactly as long as it is not full: its key expires when it would be full
-- again, so idle keys vanish, and a missing key is a full bucket.
if redis.replicate_commands then
  redis.replicate_commands()
end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = (tonumber(time[1]) - 1700000000) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
-- Replies are integers: keep them exact.
local function clamp(us)
  return math.min(math.ceil(us), 4503599627370496)
end
local function store(at)
  if at <= now then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], string.format('%.17g', at), 'PX', clamp((at - now) / 1000) + 1)
  end
end
if ARGV[4] == '0' then
  store(math.max(tat - interval * tokens, now))
  return {1, 0, 0, 0}
end
local capacity = interval * burst
-- Rounding: a millionth of a token's tolerance keeps a whole number of tokens from reading
-- as one less (the arithmetic is in doubles).
local epsilon = interval * 1e-6
if ARGV[4] == '2' then
  local available = math.floor((capacity - (tat - now) + epsilon) / interval)
  tokens = math.max(1, math.min(tokens, available))
end
local next_tat = tat + interval * tokens
if next_tat - now > capacity + epsilon then
  return {0, 0, clamp(next_tat - capacity - now), clamp(tat - now)}
end
store(next_tat)
return {tokens, math.floor((capacity - (next_tat - now) + epsilon) / interval), 0, clamp(next_tat - now)}
