#!/usr/bin/env sysbench
-- Read-only load on the TPC-C tables that tpcc.lua loads, for the replicas of the
-- write scenario: Order-Status (a customer's last order and its lines) and
-- Stock-Level (low-stock items among a district's last 20 orders), 50:50, plus
-- an item lookup. Same cardinality options as tpcc.lua (they bound the random keys).

sysbench.cmdline.options = {
   warehouses = {"Number of warehouses", 1},
   items = {"Rows in item", 100000},
   customers = {"Customers per district", 3000},
   -- Accepted so both scripts take the same dataset options; reads do not need it.
   orders = {"Initial orders per district (unused here)", 3000},
   districts = {"Districts per warehouse", 10},
}

function thread_init()
   drv = sysbench.sql.driver()
   con = drv:connect()
end

function thread_done()
   con:disconnect()
end

local function order_status(w, d)
   local c = sysbench.rand.uniform(1, sysbench.opt.customers)
   con:query(string.format(
      "SELECT c_balance, c_first, c_middle, c_last FROM customer WHERE c_w_id = %d AND c_d_id = %d AND c_id = %d",
      w, d, c))
   local rs = con:query(string.format(
      "SELECT o_id, o_entry_d, o_carrier_id FROM orders WHERE o_w_id = %d AND o_d_id = %d AND o_c_id = %d " ..
      "ORDER BY o_id DESC LIMIT 1", w, d, c))
   local row = rs:fetch_row()
   if row then
      con:query(string.format(
         "SELECT ol_i_id, ol_supply_w_id, ol_quantity, ol_amount, ol_delivery_d FROM order_line " ..
         "WHERE ol_w_id = %d AND ol_d_id = %d AND ol_o_id = %s", w, d, row[1]))
   end
end

local function stock_level(w, d)
   local rs = con:query(string.format(
      "SELECT d_next_o_id FROM district WHERE d_w_id = %d AND d_id = %d", w, d))
   local row = rs:fetch_row()
   if not row then return end
   local next_o = tonumber(row[1])
   con:query(string.format(
      "SELECT COUNT(DISTINCT s_i_id) FROM order_line JOIN stock ON s_w_id = ol_w_id AND s_i_id = ol_i_id " ..
      "WHERE ol_w_id = %d AND ol_d_id = %d AND ol_o_id >= %d AND ol_o_id < %d AND s_quantity < %d",
      w, d, next_o - 20, next_o, sysbench.rand.uniform(10, 20)))
end

function event()
   local w = sysbench.rand.uniform(1, sysbench.opt.warehouses)
   local d = sysbench.rand.uniform(1, sysbench.opt.districts)
   con:query("BEGIN")
   if sysbench.rand.uniform(1, 2) == 1 then order_status(w, d) else stock_level(w, d) end
   con:query(string.format("SELECT i_price, i_name FROM item WHERE i_id = %d",
      sysbench.rand.uniform(1, sysbench.opt.items)))
   con:query("COMMIT")
end
