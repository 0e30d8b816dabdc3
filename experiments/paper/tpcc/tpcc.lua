#!/usr/bin/env sysbench
-- TPC-C-like write load for sysbench 1.0 (MySQL/MariaDB driver), written for the
-- dbfork paper harness: the standard nine TPC-C tables, a loader (`prepare`) for
-- W warehouses, and the New-Order and Payment transactions (51:49, about the
-- standard mix's ratio between the two). Not a certified TPC-C kit: no keying or
-- think times, no Delivery/Order-Status/Stock-Level on this script (the replicas'
-- read script does the latter two), and the cardinalities per warehouse are
-- options so a small machine can load a small dataset (defaults: the spec's).
--
--   sysbench tpcc.lua --mysql-socket=S --mysql-user=root --mysql-db=tpcc \
--     --warehouses=2 --items=10000 --customers=300 --orders=300 prepare
--   sysbench tpcc.lua ... --threads=2 --time=60 --report-interval=1 run

sysbench.cmdline.options = {
   warehouses = {"Number of warehouses", 1},
   items = {"Rows in item (spec: 100000); stock has this many per warehouse", 100000},
   customers = {"Customers per district (spec: 3000)", 3000},
   orders = {"Initial orders per district (spec: 3000)", 3000},
   districts = {"Districts per warehouse (spec: 10)", 10},
}

local W, ITEMS, CUST, ORD, DIST

local function opts()
   W = sysbench.opt.warehouses
   ITEMS = sysbench.opt.items
   CUST = sysbench.opt.customers
   ORD = sysbench.opt.orders
   DIST = sysbench.opt.districts
end

local function rstr(lo, hi)
   return sysbench.rand.string(string.rep("@", sysbench.rand.uniform(lo, hi)))
end

local function rnum(n)
   return sysbench.rand.string(string.rep("#", n))
end

local schema = {
   [[CREATE TABLE IF NOT EXISTS warehouse (
      w_id INT NOT NULL, w_name VARCHAR(10), w_street_1 VARCHAR(20), w_street_2 VARCHAR(20),
      w_city VARCHAR(20), w_state CHAR(2), w_zip CHAR(9), w_tax DECIMAL(4,4), w_ytd DECIMAL(12,2),
      PRIMARY KEY (w_id)) ENGINE=InnoDB]],
   [[CREATE TABLE IF NOT EXISTS district (
      d_id TINYINT NOT NULL, d_w_id INT NOT NULL, d_name VARCHAR(10), d_street_1 VARCHAR(20),
      d_street_2 VARCHAR(20), d_city VARCHAR(20), d_state CHAR(2), d_zip CHAR(9),
      d_tax DECIMAL(4,4), d_ytd DECIMAL(12,2), d_next_o_id INT,
      PRIMARY KEY (d_w_id, d_id)) ENGINE=InnoDB]],
   [[CREATE TABLE IF NOT EXISTS customer (
      c_id INT NOT NULL, c_d_id TINYINT NOT NULL, c_w_id INT NOT NULL, c_first VARCHAR(16),
      c_middle CHAR(2), c_last VARCHAR(16), c_street_1 VARCHAR(20), c_street_2 VARCHAR(20),
      c_city VARCHAR(20), c_state CHAR(2), c_zip CHAR(9), c_phone CHAR(16), c_since DATETIME,
      c_credit CHAR(2), c_credit_lim DECIMAL(12,2), c_discount DECIMAL(4,4), c_balance DECIMAL(12,2),
      c_ytd_payment DECIMAL(12,2), c_payment_cnt INT, c_delivery_cnt INT, c_data VARCHAR(500),
      PRIMARY KEY (c_w_id, c_d_id, c_id), KEY idx_customer (c_w_id, c_d_id, c_last, c_first)) ENGINE=InnoDB]],
   [[CREATE TABLE IF NOT EXISTS history (
      h_id BIGINT NOT NULL AUTO_INCREMENT, h_c_id INT, h_c_d_id TINYINT, h_c_w_id INT, h_d_id TINYINT,
      h_w_id INT, h_date DATETIME, h_amount DECIMAL(6,2), h_data VARCHAR(24),
      PRIMARY KEY (h_id)) ENGINE=InnoDB]],
   [[CREATE TABLE IF NOT EXISTS new_order (
      no_o_id INT NOT NULL, no_d_id TINYINT NOT NULL, no_w_id INT NOT NULL,
      PRIMARY KEY (no_w_id, no_d_id, no_o_id)) ENGINE=InnoDB]],
   [[CREATE TABLE IF NOT EXISTS orders (
      o_id INT NOT NULL, o_d_id TINYINT NOT NULL, o_w_id INT NOT NULL, o_c_id INT,
      o_entry_d DATETIME, o_carrier_id TINYINT, o_ol_cnt TINYINT, o_all_local TINYINT,
      PRIMARY KEY (o_w_id, o_d_id, o_id), KEY idx_orders (o_w_id, o_d_id, o_c_id, o_id)) ENGINE=InnoDB]],
   [[CREATE TABLE IF NOT EXISTS order_line (
      ol_o_id INT NOT NULL, ol_d_id TINYINT NOT NULL, ol_w_id INT NOT NULL, ol_number TINYINT NOT NULL,
      ol_i_id INT, ol_supply_w_id INT, ol_delivery_d DATETIME, ol_quantity TINYINT,
      ol_amount DECIMAL(6,2), ol_dist_info CHAR(24),
      PRIMARY KEY (ol_w_id, ol_d_id, ol_o_id, ol_number)) ENGINE=InnoDB]],
   [[CREATE TABLE IF NOT EXISTS item (
      i_id INT NOT NULL, i_im_id INT, i_name VARCHAR(24), i_price DECIMAL(5,2), i_data VARCHAR(50),
      PRIMARY KEY (i_id)) ENGINE=InnoDB]],
   [[CREATE TABLE IF NOT EXISTS stock (
      s_i_id INT NOT NULL, s_w_id INT NOT NULL, s_quantity SMALLINT,
      s_dist_01 CHAR(24), s_dist_02 CHAR(24), s_dist_03 CHAR(24), s_dist_04 CHAR(24), s_dist_05 CHAR(24),
      s_dist_06 CHAR(24), s_dist_07 CHAR(24), s_dist_08 CHAR(24), s_dist_09 CHAR(24), s_dist_10 CHAR(24),
      s_ytd DECIMAL(8,0), s_order_cnt SMALLINT, s_remote_cnt SMALLINT, s_data VARCHAR(50),
      PRIMARY KEY (s_w_id, s_i_id)) ENGINE=InnoDB]],
}

-- Batched multi-row INSERTs: one round trip per BATCH rows.
local BATCH = 500

local function loader(con, head)
   local rows, n = {}, 0
   local function flush()
      if n > 0 then
         con:query(head .. table.concat(rows, ","))
         rows, n = {}, 0
      end
   end
   return function(values)
      n = n + 1
      rows[n] = "(" .. values .. ")"
      if n >= BATCH then flush() end
   end, flush
end

local function load_items(con)
   local add, flush = loader(con, "INSERT INTO item VALUES ")
   for i = 1, ITEMS do
      add(string.format("%d,%d,'%s',%.2f,'%s'", i, sysbench.rand.uniform(1, 10000),
         rstr(14, 24), sysbench.rand.uniform(100, 10000) / 100, rstr(26, 50)))
   end
   flush()
end

local function load_warehouse(con, w)
   con:query(string.format(
      "INSERT INTO warehouse VALUES (%d,'%s','%s','%s','%s','%s','%s',%.4f,300000.00)",
      w, rstr(6, 10), rstr(10, 20), rstr(10, 20), rstr(10, 20), rstr(2, 2), rnum(9),
      sysbench.rand.uniform(0, 2000) / 10000))
   local add, flush = loader(con, "INSERT INTO stock VALUES ")
   for i = 1, ITEMS do
      local d = {}
      for k = 1, 10 do d[k] = "'" .. rstr(24, 24) .. "'" end
      add(string.format("%d,%d,%d,%s,0,0,0,'%s'", i, w, sysbench.rand.uniform(10, 100),
         table.concat(d, ","), rstr(26, 50)))
   end
   flush()
   for d = 1, DIST do
      con:query(string.format(
         "INSERT INTO district VALUES (%d,%d,'%s','%s','%s','%s','%s','%s',%.4f,30000.00,%d)",
         d, w, rstr(6, 10), rstr(10, 20), rstr(10, 20), rstr(10, 20), rstr(2, 2), rnum(9),
         sysbench.rand.uniform(0, 2000) / 10000, ORD + 1))
      local addc, flushc = loader(con, "INSERT INTO customer VALUES ")
      local addh, flushh = loader(con, "INSERT INTO history (h_c_id,h_c_d_id,h_c_w_id,h_d_id,h_w_id,h_date,h_amount,h_data) VALUES ")
      for c = 1, CUST do
         addc(string.format(
            "%d,%d,%d,'%s','OE','%s','%s','%s','%s','%s','%s','%s',NOW(),'%s',50000.00,%.4f,-10.00,10.00,1,0,'%s'",
            c, d, w, rstr(8, 16), "NAME" .. (c % 1000), rstr(10, 20), rstr(10, 20), rstr(10, 20),
            rstr(2, 2), rnum(9), rnum(16), (sysbench.rand.uniform(1, 10) == 1) and "BC" or "GC",
            sysbench.rand.uniform(0, 5000) / 10000, rstr(300, 500)))
         addh(string.format("%d,%d,%d,%d,%d,NOW(),10.00,'%s'", c, d, w, d, w, rstr(12, 24)))
      end
      flushc(); flushh()
      local addo, flusho = loader(con, "INSERT INTO orders VALUES ")
      local addl, flushl = loader(con, "INSERT INTO order_line VALUES ")
      local addn, flushn = loader(con, "INSERT INTO new_order VALUES ")
      for o = 1, ORD do
         local cnt = sysbench.rand.uniform(5, 15)
         -- The last 30% of the initial orders are undelivered, as in the spec (900 of 3000).
         local delivered = o <= ORD * 0.7
         addo(string.format("%d,%d,%d,%d,NOW(),%s,%d,1", o, d, w, sysbench.rand.uniform(1, CUST),
            delivered and tostring(sysbench.rand.uniform(1, 10)) or "NULL", cnt))
         for l = 1, cnt do
            addl(string.format("%d,%d,%d,%d,%d,%d,%s,5,%.2f,'%s'", o, d, w, l,
               sysbench.rand.uniform(1, ITEMS), w, delivered and "NOW()" or "NULL",
               delivered and 0 or sysbench.rand.uniform(1, 999999) / 100, rstr(24, 24)))
         end
         if not delivered then addn(string.format("%d,%d,%d", o, d, w)) end
      end
      flusho(); flushl(); flushn()
   end
end

function cmd_prepare()
   opts()
   local drv = sysbench.sql.driver()
   local con = drv:connect()
   -- Warehouses are split over the prepare threads; thread 0 also makes the schema
   -- and the items (other threads wait for the schema by retrying on missing tables
   -- would be fragile, so with --threads > 1 the schema is made by every thread:
   -- CREATE TABLE IF NOT EXISTS is idempotent).
   for _, q in ipairs(schema) do con:query(q) end
   if sysbench.tid == 0 then
      print("loading item (" .. ITEMS .. " rows)")
      load_items(con)
   end
   for w = sysbench.tid + 1, W, sysbench.opt.threads do
      print(string.format("loading warehouse %d", w))
      load_warehouse(con, w)
   end
end

function cmd_cleanup()
   local drv = sysbench.sql.driver()
   local con = drv:connect()
   for _, t in ipairs({"warehouse", "district", "customer", "history", "new_order",
                       "orders", "order_line", "item", "stock"}) do
      con:query("DROP TABLE IF EXISTS " .. t)
   end
end

sysbench.cmdline.commands = {
   prepare = {cmd_prepare, sysbench.cmdline.PARALLEL_COMMAND},
   cleanup = {cmd_cleanup},
}

function thread_init()
   opts()
   drv = sysbench.sql.driver()
   con = drv:connect()
end

function thread_done()
   con:disconnect()
end

-- A deadlock or lock wait timeout restarts the event (--mysql-ignore-errors);
-- roll the half-done transaction back first.
function sysbench.hooks.before_restart_event(err)
   con:query("ROLLBACK")
end

local function new_order()
   local w = sysbench.rand.uniform(1, W)
   local d = sysbench.rand.uniform(1, DIST)
   local c = sysbench.rand.uniform(1, CUST)
   local cnt = sysbench.rand.uniform(5, 15)
   con:query("BEGIN")
   con:query(string.format("SELECT w_tax FROM warehouse WHERE w_id = %d", w))
   local rs = con:query(string.format(
      "SELECT d_tax, d_next_o_id FROM district WHERE d_w_id = %d AND d_id = %d FOR UPDATE", w, d))
   local o = tonumber(rs:fetch_row()[2])
   con:query(string.format(
      "UPDATE district SET d_next_o_id = d_next_o_id + 1 WHERE d_w_id = %d AND d_id = %d", w, d))
   con:query(string.format(
      "SELECT c_discount, c_last, c_credit FROM customer WHERE c_w_id = %d AND c_d_id = %d AND c_id = %d",
      w, d, c))
   con:query(string.format("INSERT INTO orders VALUES (%d,%d,%d,%d,NOW(),NULL,%d,1)", o, d, w, c, cnt))
   con:query(string.format("INSERT INTO new_order VALUES (%d,%d,%d)", o, d, w))
   -- Items in ascending order, so two New-Orders lock stock rows in the same order.
   local items = {}
   for l = 1, cnt do items[l] = sysbench.rand.uniform(1, ITEMS) end
   table.sort(items)
   for l = 1, cnt do
      local i = items[l]
      local qty = sysbench.rand.uniform(1, 10)
      local it = con:query(string.format("SELECT i_price, i_name, i_data FROM item WHERE i_id = %d", i))
      local price = tonumber(it:fetch_row()[1])
      con:query(string.format(
         "SELECT s_quantity, s_data, s_dist_%02d FROM stock WHERE s_w_id = %d AND s_i_id = %d FOR UPDATE",
         d, w, i))
      con:query(string.format(
         "UPDATE stock SET s_quantity = IF(s_quantity >= %d + 10, s_quantity - %d, s_quantity - %d + 91), " ..
         "s_ytd = s_ytd + %d, s_order_cnt = s_order_cnt + 1 WHERE s_w_id = %d AND s_i_id = %d",
         qty, qty, qty, qty, w, i))
      con:query(string.format("INSERT INTO order_line VALUES (%d,%d,%d,%d,%d,%d,NULL,%d,%.2f,'%s')",
         o, d, w, l, i, w, qty, qty * price, rstr(24, 24)))
   end
   con:query("COMMIT")
end

local function payment()
   local w = sysbench.rand.uniform(1, W)
   local d = sysbench.rand.uniform(1, DIST)
   local c = sysbench.rand.uniform(1, CUST)
   local amount = sysbench.rand.uniform(100, 500000) / 100
   con:query("BEGIN")
   con:query(string.format("UPDATE warehouse SET w_ytd = w_ytd + %.2f WHERE w_id = %d", amount, w))
   con:query(string.format("SELECT w_name, w_street_1, w_city, w_state, w_zip FROM warehouse WHERE w_id = %d", w))
   con:query(string.format(
      "UPDATE district SET d_ytd = d_ytd + %.2f WHERE d_w_id = %d AND d_id = %d", amount, w, d))
   con:query(string.format(
      "SELECT d_name, d_street_1, d_city, d_state, d_zip FROM district WHERE d_w_id = %d AND d_id = %d", w, d))
   con:query(string.format(
      "SELECT c_first, c_last, c_credit, c_balance FROM customer WHERE c_w_id = %d AND c_d_id = %d AND c_id = %d FOR UPDATE",
      w, d, c))
   con:query(string.format(
      "UPDATE customer SET c_balance = c_balance - %.2f, c_ytd_payment = c_ytd_payment + %.2f, " ..
      "c_payment_cnt = c_payment_cnt + 1 WHERE c_w_id = %d AND c_d_id = %d AND c_id = %d",
      amount, amount, w, d, c))
   con:query(string.format(
      "INSERT INTO history (h_c_id,h_c_d_id,h_c_w_id,h_d_id,h_w_id,h_date,h_amount,h_data) " ..
      "VALUES (%d,%d,%d,%d,%d,NOW(),%.2f,'%s')", c, d, w, d, w, amount, rstr(12, 24)))
   con:query("COMMIT")
end

function event()
   if sysbench.rand.uniform(1, 100) <= 51 then new_order() else payment() end
end
